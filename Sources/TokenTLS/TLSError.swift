/// A failure to set up or complete a TLS connection, with a message a user can act on.
/// Two errors are equal when their kinds are equal.
public struct TLSError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The identity or TLS settings cannot be used; nothing was sent.
        case configuration
        /// The TLS handshake failed, including a rejected client certificate.
        case handshake
        /// The server's certificate is not trusted or does not match the host name.
        case serverCertificate
        /// The connection could not be made or timed out.
        case connection
        /// The URL or request is malformed.
        case request
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    public static func == (lhs: TLSError, rhs: TLSError) -> Bool { lhs.kind == rhs.kind }
}
