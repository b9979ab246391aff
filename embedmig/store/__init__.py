"""Index files on disk (``files``) and the catalog of indexes, aliases and ids in SQL (``catalog``)."""
