"""Consortium trust: organizations, membership documents in a membership ledger, and signed
submissions (see ``docs/consortium.md``).

>>> from streamledger.consortium import MembershipDocument, Org, membership_at  # doctest: +SKIP
"""

from __future__ import annotations

from streamledger.consortium.membership import (
    MEMBERSHIP_CONTENT_TYPE,
    OPTION_GENESIS,
    OPTION_KIND,
    OPTION_MEMBERSHIP,
    OPTION_SIGNED,
    MembershipChange,
    MembershipDocument,
    MembershipError,
    MembershipHistory,
    Org,
    check_change,
    cosign_document,
    create_membership_ledger,
    load_membership,
    membership_at,
    membership_ledger_of,
    replay_membership,
    sign_document,
    submit_change,
    verify_membership_chain,
    verify_membership_evidence,
)
from streamledger.consortium.submission import (
    Submission,
    SubmissionGate,
    SubmissionRejected,
    Verdict,
    append_signed,
    check_submission,
    create_signed_ledger,
    sign_submission,
    signed_item,
    signed_ledger_options,
    submit,
)

__all__ = [
    "MEMBERSHIP_CONTENT_TYPE",
    "OPTION_GENESIS",
    "OPTION_KIND",
    "OPTION_MEMBERSHIP",
    "OPTION_SIGNED",
    "MembershipChange",
    "MembershipDocument",
    "MembershipError",
    "MembershipHistory",
    "Org",
    "Submission",
    "SubmissionGate",
    "SubmissionRejected",
    "Verdict",
    "append_signed",
    "check_change",
    "check_submission",
    "cosign_document",
    "create_membership_ledger",
    "create_signed_ledger",
    "load_membership",
    "membership_at",
    "membership_ledger_of",
    "replay_membership",
    "sign_document",
    "sign_submission",
    "signed_item",
    "signed_ledger_options",
    "submit",
    "submit_change",
    "verify_membership_chain",
    "verify_membership_evidence",
]
