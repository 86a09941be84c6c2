"""pandas for the ``to_frame()`` methods of results (pandas is optional: the ``pandas`` extra)."""

from __future__ import annotations


def require_pandas():
    """The pandas module, or an ImportError that says how to install it."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_frame() needs pandas, which is not installed: pip install 'calibkit[pandas]' "
                          "(or pip install pandas)") from None
    return pandas
