"""Alternative template sets for async_downloads; each subpackage is a Django app."""
