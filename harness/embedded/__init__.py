"""Models the harness trains itself, behind one contract (``harness models list|build|check``).

- :mod:`.recipe` -- :class:`~harness.embedded.recipe.Recipe`, the base of every training recipe
  (recorded whole in the model card), with its AdamW set-up and optimiser step;
- :mod:`.schedule` -- :func:`~harness.embedded.schedule.warmup_cosine`, the one learning-rate schedule;
- :mod:`harness.core.card` -- the one on-disk form (safetensors weights + a JSON card), shared with
  :func:`harness.models.gpt.save_gpt` / ``load_gpt`` (so it lives in the core, below models);
- :mod:`.registry` -- :class:`~harness.embedded.registry.EmbeddedModel` (build / is_current / verify /
  reproduce / locate) and the one registry of them;
- the families: :mod:`.planted` (planted-circuit GPTs: specs, samplers, trainer, verifier, build),
  :mod:`.icl_learner` (the in-context regressor) and :mod:`.docstring_lm` (``docstring-gpt``);
- ``weights/<name>/`` -- the committed models.

Tasks import the loaders (``load_planted``, ``load_icl_model``, ``load_docstring_gpt``); nothing here
imports a task (the trainers read the shared data generators of :mod:`harness.data`: circuit prompts
and splits, the docstring corpus).
"""
