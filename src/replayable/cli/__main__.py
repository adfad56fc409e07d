from replayable.cli import main

main()
