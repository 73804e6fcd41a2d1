"""``python -m archsearch.cli``: the executable."""
from . import entry

entry()
