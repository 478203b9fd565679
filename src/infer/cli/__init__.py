"""The command line: Typer lives here and nowhere else."""


def entry() -> None:
    """The console script. The imports are inside the guard, so Ctrl-C during start-up ends quietly too."""
    try:
        from infer.cli.app import main
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("infer: interrupted\n")
        raise SystemExit(130) from None
    main()
