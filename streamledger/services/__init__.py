"""Long-running services built on the ledger API (see :mod:`.sequencer`)."""

from streamledger.services.sequencer import Limits, Sequencer, SequencerStats, validate_submission

__all__ = ["Limits", "Sequencer", "SequencerStats", "validate_submission"]
