"""Model transplantation (STUDY.md section 5, seed 001): activation-selected modules copied, or blended
by a strength alpha, from a stronger related model into a weaker one, with random and layer-matched
controls and copy-all, scored on the same documents as the target."""
