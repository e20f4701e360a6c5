"""The studies that stand on everything below: ``compare`` (methods side by side, the main job), ``study`` (a preset
of rows trained and evaluated under one budget, in slices), ``report`` (tables and plots of any results), ``lab``
(a small RoPE model trained from scratch on CPU to test the papers' claims)."""
