from infer.cli import entry

entry()
