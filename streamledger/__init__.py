"""streamledger."""
