"""The command line: Typer lives here and nowhere else."""

import sys


def entry() -> None:
    """The console script. The imports are inside the guard, so Ctrl-C during start-up ends quietly too."""
    try:
        from infer import interrupts

        interrupts.install()  # a Ctrl-C that lands inside a callback is delivered again, not dropped
        from infer.cli.fast import answer

        if answer(sys.argv[1:]):  # --version and the root --help, without importing Typer
            return
        from infer.cli.app import exit_now, main
    except KeyboardInterrupt:
        sys.stderr.write("infer: interrupted\n")
        raise SystemExit(130) from None
    main()
    exit_now()
