"""``python -m tasks.icl.build [names] [--out DIR] [--force]``: (re)build the icl family's in-context learners.

Without ``--out`` the models go to the committed directory ``tasks/icl/models/``; a model whose card
matches its current recipe is kept unless ``--force``.  ``python -m tasks.icl.build list`` shows them.
"""

from tasks.icl.model import main

if __name__ == "__main__":
    raise SystemExit(main())
