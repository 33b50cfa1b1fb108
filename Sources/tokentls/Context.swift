import Foundation
import PKCS11
import TokenStore

/// The settings every token command shares: module, token and PIN source.
struct TokenOptions {
    static let valued: Set<String> = ["--module", "--token", "--pin-file"]

    var modulePath: String?
    var token: String?
    let pinFile: String?

    /// Returns the settings with the token and module that `uri` names, where it names them.
    func applying(_ uri: PKCS11URI) -> TokenOptions {
        var copy = self
        var tokenPart = uri
        tokenPart.object = nil
        tokenPart.id = nil
        tokenPart.type = nil
        tokenPart.modulePath = nil
        if uri.token != nil || uri.serial != nil {
            copy.token = tokenPart.description
        }
        if let modulePath = uri.modulePath {
            copy.modulePath = modulePath
        }
        return copy
    }

    init(_ arguments: Arguments) {
        modulePath = arguments.value("--module")
        token =
            arguments.value("--token") ?? ProcessInfo.processInfo.environment["TOKENTLS_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        pinFile = arguments.value("--pin-file")
    }

    /// Loads the module (preparing the embedded default when it is SoftHSM).
    func loadModule() throws -> (Module, StoreLocation) {
        let location = try StoreLocation.resolve(modulePath: modulePath)
        return (try Module.load(path: location.modulePath), location)
    }

    /// Finds the token that --token or TOKENTLS_TOKEN names (a label or a pkcs11: URI), or
    /// the only initialised token when neither is set.
    func findToken(_ module: Module) throws -> Token {
        try TokenLock.withAllTokens(.shared) { try findTokenUnlocked(module) }
    }

    private func findTokenUnlocked(_ module: Module) throws -> Token {
        guard let token else {
            let initialised = try module.tokens().filter(\.isInitialized)
            if initialised.count == 1 {
                return initialised[0]
            }
            if initialised.isEmpty {
                throw CommandError(
                    .failure,
                    "module \(module.path) has no initialised token: create one with 'tokentls token init --label LABEL'")
            }
            let labels = initialised.map { "\"\($0.label)\"" }.joined(separator: ", ")
            throw CommandError(.usage, "several tokens are present (\(labels)): choose one with --token LABEL or TOKENTLS_TOKEN")
        }
        if token.lowercased().hasPrefix("pkcs11:") {
            return try module.findToken(try PKCS11URI(parsing: token).tokenSelector)
        }
        return try module.findToken(TokenSelector(label: token))
    }

    /// Opens the identity store on the chosen token, logged in.
    func openStore() throws -> TokenStore {
        let (module, _) = try loadModule()
        return try openStore(on: try findToken(module))
    }

    /// Opens the identity store on `token`, logged in.
    func openStore(on token: Token) throws -> TokenStore {
        let pin = try readPIN(for: token)
        defer { pin?.wipe() }
        return try TokenStore(token: token, pin: pin)
    }

    /// Reads the user PIN from --pin-file, TOKENTLS_PIN or the terminal; nil for a token
    /// that needs no login.
    func readPIN(for token: Token) throws -> SecretBytes? {
        guard token.isLoginRequired else {
            return nil
        }
        return try SecretInput.read(
            variable: "TOKENTLS_PIN", file: pinFile, prompt: "PIN for token \"\(token.label)\": ", what: "PIN",
            fileOption: "--pin-file")
    }
}
