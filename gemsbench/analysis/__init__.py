"""Results tables, one module per table (``main``, ``significance``, ``ablation``, ``efficiency``, ``conflict``,
``convergence``, ``retention``, ``sensitivity``), their shared rendering (:mod:`.render`) and the registry that
names them (:mod:`.registry`, ``TABLES[name]``). Each module collects its rows from saved run outputs and writes
its files; nothing here trains or loads a model."""
