import COpenSSL
import CP11Kit
import PKCS11
import TokenStore

/// `tokentls --version`: the versions of TokenTLS, OpenSSL, p11-kit and the module.
enum VersionCommand {
    static let version = "0.1.0"

    static func run(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued)
        output.line("tokentls \(version)")
        output.line("OpenSSL: \(String(cString: OpenSSL_version(OPENSSL_VERSION)))")
        output.line("p11-kit: libp11-kit.so.0 (the library reports no version)")
        do {
            let (module, _) = try TokenOptions(parsed).loadModule()
            let info = try module.info()
            output.line("PKCS#11 module: \(module.path) (\(info.manufacturer), \(info.description) \(info.version))")
        } catch {
            output.line("PKCS#11 module: not loaded (\(CommandError.from(error).description))")
        }
    }
}
