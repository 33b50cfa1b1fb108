import CP11Kit
import Foundation

/// The optional trace of PKCS#11 calls, switched on by `TOKENTLS_TRACE=1`.
///
/// Each line names the function, and for signing the mechanism, and the result.
/// It never contains data, digests, signatures or PINs.
enum Trace {
    static let enabled: Bool = ProcessInfo.processInfo.environment["TOKENTLS_TRACE"] == "1"

    static func call(_ function: String, _ rv: CK_RV, detail: String = "") {
        guard enabled else {
            return
        }
        let name = PKCS11Error.name(ofReturnValue: UInt(rv))
        let suffix = detail.isEmpty ? "" : " " + detail
        FileHandle.standardError.write(Data("tokentls trace: \(function)\(suffix) -> \(name)\n".utf8))
    }
}
