from bielik_quant.cli import main

main()
