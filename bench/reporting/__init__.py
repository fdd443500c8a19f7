"""The reporting: what a person reads, one module per part.

- :mod:`.report` — a run's markdown report (``bench report``), the hub that orders its sections:
  :mod:`.header`, :mod:`.trust`, :mod:`.worst`, :mod:`.autoattack`, :mod:`.tables`, :mod:`.implementations`,
  :mod:`.minimum_norm`, :mod:`.defenses`, :mod:`.next_steps`, with :mod:`.plots` and the shared :mod:`.text`
  formatting (the faces table lives with the faces workflow, :func:`bench.faces.fakes_accepted`);
- :mod:`.compare` — two runs cell by cell (``bench compare``);
- :mod:`.history` — a suite's runs over time (``bench history``).
"""
