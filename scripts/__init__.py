"""The harness's command-line tools, importable as a package (``from scripts import make_tables``).

Each module is also run as a file, ``python scripts/<name>.py ...``; both ways import the installed
project (``make install``: ``pip install -e .``), so no script edits ``sys.path``.
"""
