from reporunner.cli import main

main()
