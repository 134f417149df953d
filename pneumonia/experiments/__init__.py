"""Working with many runs: `revisions` (outputs at a git revision or DVC experiment), `ablation`
(the arm x seed grid as queued DVC experiments) and `report` (the grid's answer with error bars)."""
