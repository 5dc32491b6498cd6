from prefectstack.cli import main

main()
