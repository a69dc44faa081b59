"""Real-time crypto fraud and threat detection on verified streams (see docs/fraud.md).

Modules: ``events`` (the data contract: input events and alerts), ``simulate`` (synthetic
exchange activity with labelled incidents), ``evaluate`` (precision/recall against labels),
``windows`` (event-time windows), ``detectors`` (rules and the online anomaly model),
``pipeline`` (verified input -> suspicious-events and fraud-alert-events ledgers),
``watch`` (live terminal view).
"""
