import Foundation
import PKCS11
import TokenStore

/// `tokentls token init` and `tokentls token list`.
enum TokenCommands {
    static func run(_ arguments: [String], output: Output) throws {
        guard let subcommand = arguments.first else {
            throw UsageError("missing subcommand: use 'tokentls token init --label LABEL' or 'tokentls token list'")
        }
        let rest = Array(arguments.dropFirst())
        switch subcommand {
        case "init": try initialize(rest, output: output)
        case "list": try list(rest, output: output)
        default: throw UsageError("unknown subcommand 'token \(subcommand)': use 'token init' or 'token list'")
        }
    }

    private static func initialize(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued.union(["--label", "--so-pin-file"]))
        guard parsed.operands.isEmpty else {
            throw UsageError("unexpected argument '\(parsed.operands[0])' for 'token init'")
        }
        guard let label = parsed.value("--label") else {
            throw UsageError("'token init' needs --label LABEL")
        }
        let options = TokenOptions(parsed)
        let (module, _) = try options.loadModule()
        let tokens = try module.tokens()
        if tokens.contains(where: { $0.isInitialized && $0.label == label }) {
            throw CommandError(.failure, "a token labelled \"\(label)\" already exists in \(module.path): choose another label")
        }
        guard let free = tokens.first(where: { !$0.isInitialized }) else {
            throw CommandError(.failure, "module \(module.path) has no uninitialised token to use")
        }
        let securityOfficerPIN = try SecretInput.read(
            variable: "TOKENTLS_SO_PIN", file: parsed.value("--so-pin-file"), prompt: "New security officer PIN: ",
            what: "security officer PIN", fileOption: "--so-pin-file", confirm: true)
        defer { securityOfficerPIN.wipe() }
        let userPIN = try SecretInput.read(
            variable: "TOKENTLS_PIN", file: options.pinFile, prompt: "New user PIN: ", what: "PIN", fileOption: "--pin-file",
            confirm: true)
        defer { userPIN.wipe() }
        let token = try TokenLock.withAllTokens(.exclusive) {
            try module.initializeToken(inSlot: free.slot, label: label, securityOfficerPIN: securityOfficerPIN, userPIN: userPIN)
        }
        output.line("Initialised token \"\(token.label)\" (serial \(token.serial))")
        output.line("URI: \(token.uri)")
    }

    private static func list(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: ["--json"], valued: TokenOptions.valued)
        let (module, _) = try TokenOptions(parsed).loadModule()
        let tokens = try module.tokens()
        if parsed.has("--json") {
            let rows = tokens.map {
                TokenRow(
                    label: $0.label, serial: $0.serial, manufacturer: $0.manufacturer, model: $0.model,
                    initialized: $0.isInitialized,
                    uri: $0.uri)
            }
            try output.json(rows)
            return
        }
        if tokens.isEmpty {
            output.line("No tokens in \(module.path).")
            return
        }
        let table = tokens.map { token in
            [
                token.isInitialized ? token.label : "(uninitialised)", token.serial, token.manufacturer, token.model,
                token.isInitialized ? token.uri : "",
            ]
        }
        output.table(header: ["Label", "Serial", "Manufacturer", "Model", "URI"], rows: table)
    }

    struct TokenRow: Encodable {
        let label: String
        let serial: String
        let manufacturer: String
        let model: String
        let initialized: Bool
        let uri: String
    }
}
