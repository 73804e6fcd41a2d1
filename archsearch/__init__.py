"""archsearch."""
