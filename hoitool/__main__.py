from hoitool.cli.app import main

main()
