from services.tokenizer.main import main

if __name__ == "__main__":
    main()
