"""``python -m harness.tasks.icl.build [names] [--out DIR] [--force]``: (re)build the icl family's in-context learners.

Without ``--out`` the models go to the committed directory ``harness/tasks/icl/models/``; a model whose card
matches its current recipe is kept unless ``--force``.  ``python -m harness.tasks.icl.build list`` shows them.
"""

from harness.tasks.icl.model import main

if __name__ == "__main__":
    raise SystemExit(main())
