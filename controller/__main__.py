"""`python -m controller` is `failoverctl`."""

from controller.cli import main

main()
