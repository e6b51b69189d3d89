from crosstask_cli.cli.app import main

main()
