"""The audit: what makes a run's numbers check themselves, one module per concept.

- :mod:`.worst_case` — robust accuracy over every attack per image (AutoAttack's and RobustBench's definition);
- :mod:`.indicators` — indicators of attack failure judged on a crafting (Pintor et al. 2022);
- :mod:`.queries` — the query log those indicators read (losses, gradients, success per query);
- :mod:`.flags` — a cell's flags and verdict, and the flags judged across cells;
- :mod:`.crosscheck` — the same attack from two libraries, image by image;
- :mod:`.curves` — minimum-norm attacks' curves and their optimality;
- :mod:`.cascade` — attacks run only on the images still standing;
- :mod:`.stats` — Wilson intervals and McNemar's exact test.
"""
