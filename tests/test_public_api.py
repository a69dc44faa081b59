"""The package's public surface: a sorted __all__ whose every name resolves."""

import streamledger


def test_all_is_sorted_and_unique():
    assert streamledger.__all__ == sorted(set(streamledger.__all__))


def test_every_public_name_resolves():
    for name in streamledger.__all__:
        assert getattr(streamledger, name) is not None, name


def test_errors_share_one_root():
    for name in streamledger.__all__:
        obj = getattr(streamledger, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, streamledger.StreamledgerError), name
