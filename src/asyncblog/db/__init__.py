"""Everything that knows a database driver, in modules whose imports run one way:

- `types`: column types and SQL functions (no engine: models and migrations import only these);
- `errors`: the one translation of driver and database errors into the service's errors;
- `engine`: engine options per dialect;
- `admission`: the first-come-first-served gate in front of the pool;
- `statements`, `json`: Core statements compiled once per dialect, views rendered to JSON in SQL;
- `database`: the process's `Database` and the data path (`Database.reader()`, `Database.writer()`).

This package file imports nothing, so that importing `asyncblog.db.types` connects nothing.
"""
