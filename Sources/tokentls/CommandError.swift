import PKCS11
import TokenStore

/// A failure that ends the command, with the exit status the README documents.
struct CommandError: Error, CustomStringConvertible {
    enum Status: Int32 {
        /// The operation failed: a file, the token, an identity, an export refusal.
        case failure = 1
        /// The command line is wrong.
        case usage = 2
        /// Logging in to the token failed: wrong PIN, locked PIN.
        case login = 3
        /// The TLS handshake failed or the server's certificate is not trusted.
        case tls = 4
        /// The connection failed or timed out before TLS started.
        case connection = 5
        /// The server answered with an HTTP error status and --fail was given.
        case httpError = 6
    }

    let status: Status
    let description: String

    init(_ status: Status, _ description: String) {
        self.status = status
        self.description = description
    }

    /// Maps a library error to a status and its one-line message.
    static func from(_ error: Error) -> CommandError {
        switch error {
        case let error as CommandError:
            return error
        case let error as UsageError:
            return CommandError(.usage, error.description)
        case let error as TokenStoreError:
            if error.kind == .token, let underlying = error.underlying, underlying.function == "C_Login" {
                return CommandError(.login, error.message)
            }
            return CommandError(.failure, error.message)
        case let error as PKCS11Error:
            let isUsage = error.kind == .invalidPIN || error.kind == .invalidLabel || error.kind == .invalidURI
            return CommandError(isUsage ? .usage : .failure, error.description)
        default:
            return CommandError(.failure, "\(error)")
        }
    }
}
