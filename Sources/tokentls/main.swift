print("tokentls")
