from dus.cli import main

main()
