"""Data generators shared by the tasks and by the trainers of the embedded models.

- :mod:`harness.data.prompts`: IOI and greater-than prompt templates, generators and renderings;
- :mod:`harness.data.alignment`: where a rendered prompt's segments are in a model's tokens;
- :mod:`harness.data.vocabulary`: what a model's tokenizer can express of a circuit task (rendering,
  usable candidates and templates, what was dropped and why);
- :mod:`harness.data.circuits`: the circuit tasks' metrics and tokenised clean / corrupted splits;
- :mod:`harness.data.corpus`: Python standard-library docstrings and pydoc sentences (the text of the
  docstring LM and of the reconstruction tasks).

They sit below both ``harness.tasks`` and ``harness.embedded``, so that a planted model is trained and
verified on exactly the prompts its task scores, without the trainer importing a task.
"""
