"""Learned structure vs initialisation (STUDY.md section 6; seed 002, arXiv 2601.15871).

One module per job: `units` (which units each weight entry links), `null_test` (entries and edges
against the step-0 and noise-twin nulls, with FDR), `anneal` (structural annealing and its magnitude control),
`components` (dependency graph, connected components, the components run apart), `weibull` (the Weibull
diagnostic of a matrix), `run` (the stage's grid of cells).
"""
