"""The specs of embedmig; `tests.support` holds their helpers."""
