import Foundation
import PKCS11
import TokenStore

let output = Output()
let arguments = Array(CommandLine.arguments.dropFirst())

let usage = """
    usage: tokentls COMMAND [OPTIONS]

    Identities (certificate + private key kept in a PKCS#11 token):
      import-pfx FILE [--exportable] [--label NAME] [--password-file FILE] [--allow-missing-mac]
      list [--json]
      remove THUMBPRINT
      export-pfx THUMBPRINT --out FILE [--password-file FILE]
      repair [--yes]          list key objects left without a certificate; --yes removes them
    HTTPS with a client certificate from the token:
      request URL [--thumbprint HEX | --key-uri pkcs11:... | --no-client-certificate] [--root-store-only] [curl options]
        without an identity, one is chosen from the CA names the server sends
        curl options: -X METHOD, -H "Name: value", -d DATA, --data-binary @FILE, -o FILE,
        -i, -v, -f/--fail, -L, --cacert FILE, --resolve HOST:PORT:ADDRESS,
        --connect-timeout SECONDS, -m/--max-time SECONDS, --tlsv1.2, --tlsv1.3, --tls-max 1.2|1.3
    Root store (trust anchors in the token; changes need the security officer PIN):
      trust add FILE [--so-pin-file FILE]      PEM or DER, one or more CA certificates
      trust list [--json]
      trust remove THUMBPRINT [--so-pin-file FILE]
      verify THUMBPRINT|FILE [--policy ssl-client|ssl-server] [--dns-name NAME] [--root-store-only]
    Tokens:
      token init --label LABEL [--so-pin-file FILE]
      token list [--json]
    Other:
      version | --version
      help | --help

    Options for every token command:
      --module PATH     PKCS#11 module (env TOKENTLS_MODULE; default \(Module.defaultPath))
      --token LABEL     token label or pkcs11: URI (env TOKENTLS_TOKEN; default: the only token)
      --pin-file FILE   read the user PIN from the first line of FILE (else env TOKENTLS_PIN,
                        else a prompt on the terminal)
    PFX passwords come from env TOKENTLS_PFX_PASSWORD, --password-file or a prompt.
    Set TOKENTLS_TRACE=1 to trace PKCS#11 calls (names and results only) on standard error.
    """

func run() throws {
    guard let command = arguments.first else {
        output.diagnostic(usage)
        throw CommandError(.usage, "missing command")
    }
    let rest = Array(arguments.dropFirst())
    if rest.contains("--help") || rest.contains("-h") {
        output.line(usage)
        return
    }
    switch command {
    case "import-pfx": try IdentityCommands.importPFX(rest, output: output)
    case "list": try IdentityCommands.list(rest, output: output)
    case "remove": try IdentityCommands.remove(rest, output: output)
    case "export-pfx": try IdentityCommands.exportPFX(rest, output: output)
    case "repair": try IdentityCommands.repair(rest, output: output)
    case "request": try RequestCommand.run(rest, output: output)
    case "token": try TokenCommands.run(rest, output: output)
    case "trust": try TrustCommands.run(rest, output: output)
    case "verify": try TrustCommands.verify(rest, output: output)
    case "version", "--version": try VersionCommand.run(rest, output: output)
    case "help", "--help", "-h": output.line(usage)
    default: throw UsageError("unknown command '\(command)': see 'tokentls help'")
    }
}

var status: Int32 = 0
do {
    try run()
} catch {
    let failure = CommandError.from(error)
    output.diagnostic("tokentls: error: \(failure.description)")
    status = failure.status.rawValue
}
// Finalise PKCS#11 modules before exit: SoftHSM uses OpenSSL itself and can crash in
// OpenSSL's exit-time cleanup while it is still initialised.
Module.finalizeAll()
exit(status)
