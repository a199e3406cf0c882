"""The book's tools: standard library and PyYAML only, so that `make book` and `make book-check` run without numpy,
pandas or torch (``tests/test_book_light.py``).

* :mod:`~stsynth_lib.book.publish`: run stamps, reference runs, the staged book, the landing page and README table;
* :mod:`~stsynth_lib.book.check`, :mod:`~stsynth_lib.book.screens`, :mod:`~stsynth_lib.book.content`,
  :mod:`~stsynth_lib.book.browser`: the built book as a reader sees it;
* :mod:`~stsynth_lib.book.notebook_sync`: paired notebooks and their Colab and option cells;
* :mod:`~stsynth_lib.book.report_format`: tables, intervals and plurals for pages (the chapters and the library's
  result tables use it too).

Of the rest of stsynth_lib they import only the base layer (:mod:`stsynth_lib.verdict`, :mod:`stsynth_lib.options`).
"""
