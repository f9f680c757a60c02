from meshlab.cli import main

main()
