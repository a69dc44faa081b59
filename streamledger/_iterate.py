"""Iteration helpers shared by the ledger and the backends."""

import collections

#: Run an iterable for its side effects, in a C-level loop (``drain(map(f, xs))``).
drain = collections.deque(maxlen=0).extend
