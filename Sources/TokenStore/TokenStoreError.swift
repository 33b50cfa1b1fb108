import PKCS11

/// An error of the identity store, phrased for the person who can fix it.
///
/// `description` is one line naming the value, what is wrong and what to do.
/// Two errors are equal when their kinds are equal.
public struct TokenStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The file is not a PFX that can be decoded.
        case invalidPFX
        /// The PFX password is wrong.
        case wrongPassword
        /// The key type, size or curve is not supported.
        case unsupportedKey
        /// The PFX holds no private key, or a key that does not match its certificate.
        case missingOrMismatchedKey
        /// A certificate file could not be read.
        case invalidCertificate
        /// No identity has the given thumbprint or URI.
        case identityNotFound
        /// More than one identity matches.
        case ambiguousIdentity
        /// The identity's key may not leave the token.
        case notExportable
        /// A file could not be read or written.
        case file
        /// The token reported an error.
        case token
        /// An OpenSSL call failed unexpectedly.
        case openSSL
        /// The token holds objects that do not form complete identities.
        case inconsistentToken
    }

    public let kind: Kind
    public let message: String
    /// The PKCS#11 error behind a `.token` error.
    public let underlying: PKCS11Error?

    public init(_ kind: Kind, _ message: String, underlying: PKCS11Error? = nil) {
        self.kind = kind
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }

    public static func == (lhs: TokenStoreError, rhs: TokenStoreError) -> Bool {
        lhs.kind == rhs.kind
    }
}
