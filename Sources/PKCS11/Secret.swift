import Foundation

/// Bytes that must not linger in memory: a PIN, a password, a private key component.
///
/// The bytes live in one heap buffer that is never copied by this type and is
/// overwritten with zeros when the value is released or `wipe()` is called.
/// `description` never shows the content.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible {
    // Written only at creation and by wipe(); readers call withUnsafeBytes on the
    // thread that owns the value.
    private var buffer: UnsafeMutableRawBufferPointer

    /// Takes a copy of `bytes`. The caller stays responsible for wiping its own copy.
    public init(copying bytes: UnsafeRawBufferPointer) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        buffer = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes.count])
        if bytes.count > 0 {
            buffer.copyMemory(from: bytes)
        }
    }

    /// Allocates `count` zero bytes for `fill` to write into.
    public init(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 1)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        buffer = UnsafeMutableRawBufferPointer(rebasing: storage[0..<count])
        do {
            try fill(buffer)
        } catch {
            SecretBytes.clear(storage)
            storage.deallocate()
            throw error
        }
    }

    /// Takes the bytes of a UTF-8 string. The string itself cannot be wiped, so prefer
    /// reading secrets into `SecretBytes` directly where possible.
    public convenience init(utf8 string: String) {
        var copy = Array(string.utf8)
        self.init(copying: copy.withUnsafeBytes { $0 })
        copy.withUnsafeMutableBytes { SecretBytes.clear($0) }
    }

    deinit {
        SecretBytes.clear(buffer)
        buffer.baseAddress.map { UnsafeMutableRawPointer($0).deallocate() }
    }

    public var count: Int { buffer.count }
    public var isEmpty: Bool { buffer.isEmpty }

    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(buffer))
    }

    /// Overwrites the bytes with zeros now; the value then holds zeros.
    public func wipe() {
        SecretBytes.clear(buffer)
    }

    public var description: String { "<secret, \(count) bytes>" }

    /// Compares the bytes with another secret in time that depends only on the lengths.
    public func matches(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return withUnsafeBytes { mine in
            other.withUnsafeBytes { theirs in
                var difference: UInt8 = 0
                for index in 0..<mine.count {
                    difference |= mine[index] ^ theirs[index]
                }
                return difference == 0
            }
        }
    }

    /// Zeroes memory in a way the compiler may not remove.
    public static func clear(_ bytes: UnsafeMutableRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            return
        }
        explicit_bzero(base, bytes.count)
    }
}
