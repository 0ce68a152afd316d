"""fedsafe: federated instruction tuning of LLMs under safety attacks and defenses, on Ray."""

__version__ = "0.1.0"

__all__ = ["load", "run"]


def __getattr__(name: str):
    """``fedsafe.run`` and ``fedsafe.load`` (``fedsafe.api``), imported on first use so that ``import fedsafe``
    stays light."""
    if name in __all__:
        from fedsafe import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsafe' has no attribute {name!r}")
