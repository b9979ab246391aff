"""The checks after the swap, run from cron or CI: ``verify`` (the contracts on what an alias
serves now), ``watch`` (the decay watch), ``status`` (the readers) and ``probe`` (embedder drift).

They read what ``serve`` serves and what ``store`` keeps; nothing of ``migrate``, and nothing in
``serve`` reads them (tests/test_architecture.py).
"""
