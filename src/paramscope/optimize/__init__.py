"""Inference-time optimisation and compression from the ablation atlas (STUDY.md section 4).

- `profile`: the profile file format (unit -> scale, for one model digest) and loading a model with it;
- `candidates`: searchable units and their order from the atlas (dev only);
- `search`: budgeted coordinate ascent and CMA-ES on dev, random controls of equal size and strength;
- `compress`: removal orders (importance, magnitude, Wanda-style, random) for compression curves;
- `run`: the stage's grid of result cells.
"""
