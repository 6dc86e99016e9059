"""What each stage's result rows hold, declared once. A schema's version is part of every key of that
stage's cells: bump it when rows change shape or meaning, so that cells made by older code are recomputed
instead of being mixed into new tables. The writing stage checks a cell against its schema before trusting
it; every reader checks the cells it reads against the same declaration. Kept apart from the stages' code,
so that a report depends on the shape of the rows, not on how they are made."""

from paramscope.store import RowSchema

# evaluate. Version 2: `acc` and `ex_correct` follow the task's metric; `metric`, `acc_plain` and
# `ex_correct_plain` added.
EVAL = RowSchema(2, {"model": "str", "digest": "str", "task": "str", "split": "str", "metric": "str", "n": "int",
                     "acc": "float", "acc_plain": "float", "loss": "float", "ex_doc_ids": "list",
                     "ex_correct": "list", "ex_correct_plain": "list"})

# ablate: one row per unit of a map.
ABLATE = RowSchema(5, {"model": "str", "digest": "str", "task": "str", "split": "str", "cell": "str",
                       "group": "str", "layer": "int", "unit": "int", "n_units": "int", "op": "str", "value": "float",
                       "n": "int", "acc_clean": "float", "acc": "float", "delta_acc": "float", "ci_low": "float",
                       "ci_high": "float", "p_mcnemar": "float", "delta_loss": "float", "ex_correct": "list"})

# transplant. Version 2: the atlas's columns that version 1 reused with other meanings (unit = replicate,
# n_units = k, value = alpha, unit_name = label; group, layer and op constant) are gone.
TRANSPLANT = RowSchema(2, {"model": "str", "digest": "str", "task": "str", "split": "str", "cell": "str",
                           "donor": "str", "pair": "str", "kind": "str", "method": "str", "ranking": "str",
                           "replicate": "int", "k": "int", "n_modules": "int", "alpha": "float", "n": "int",
                           "acc": "float", "acc_clean": "float", "delta_acc": "float", "ci_low": "float",
                           "ci_high": "float", "tir": "float", "gbr": "float", "modules": "list",
                           "ex_doc_ids": "list", "ex_correct": "list"})

# structure: the four kinds of cell share these columns; the rest depends on `kind` (and `row_type`).
STRUCTURE = RowSchema(4, {"model": "str", "digest": "str", "kind": "str", "cell": "str"})

# optimize: the four kinds of cell (search, control, transfer, compress) share these columns; the rest
# depends on `kind`.
OPTIMIZE = RowSchema(2, {"model": "str", "digest": "str", "task": "str", "kind": "str", "cell": "str",
                         "split": "str", "n": "int", "acc": "float", "acc_clean": "float", "delta_acc": "float",
                         "ex_doc_ids": "list", "ex_correct": "list", "ex_clean_correct": "list"})

# vps: the version is also a column of every row; the stage prunes cells of other versions.
VPS = RowSchema(3, {"model": "str", "digest": "str", "task": "str", "split": "str", "condition": "str",
                    "cell": "str", "schema": "int", "n": "int", "acc": "float", "loss": "float",
                    "ex_doc_ids": "list", "ex_correct": "list"}, version_column="schema")
