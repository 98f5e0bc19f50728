// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Trading contract of the blockchain-empowered MEC system, with escrow.
/// @notice The paper's CreationTrade() and Trading() (sections II-III, V.C) plus what a real
/// payment needs: the edge service provider (ESP, the deployer) registers MEC servers and sets
/// the unit price mu; Trading() holds the service cost phi_u = mu * xi_u in escrow for one MEC
/// server and one task; the MEC server is paid when it records the task's completion before the
/// deadline tau_u, and the UE takes a refund once the deadline has passed without a result.
///
/// Settlement rules (the two windows never overlap, so completion and refund cannot race):
///   - block.timestamp <= deadline: only the task's MEC server may settle, by complete();
///   - block.timestamp >  deadline: only the UE may settle, by refund().
///
/// Units: unit price mu in wei per Gcycle (1e9 CPU cycles); service demand xi_u in CPU cycles;
/// data size d_u in bits; deadline in seconds of block time (unix); amounts in wei.
/// phi_u = mu * xi_u / 1e9, rounded down.
///
/// Gas: one escrow is one storage slot (amount, deadline, MEC index and state packed), which is
/// what keeps trading() near the 21,000 + 22,100 gas floor of "one transaction writing one slot".
contract TradingContract {
    /// Life cycle of one escrow. None means the (UE, task id) pair was never used.
    enum State { None, Open, Paid, Refunded }

    /// One MEC server: its payee wallet W_m and its index (1, 2, ...; 0 = not registered).
    struct Mec {
        address payable wallet;
        uint32 index;
    }

    /// One escrowed payment, packed into a single 256-bit slot (128 + 40 + 32 + 8 bits).
    struct Escrow {
        uint128 amount;     // phi_u, wei
        uint40 deadline;    // tau_u as an absolute block time, unix seconds
        uint32 mecIndex;    // the MEC server that may complete the task
        State state;
    }

    uint256 private constant CYCLES_PER_GCYCLE = 1e9;

    /// The edge service provider (ESP): the deployer, who registers MEC servers and sets mu.
    address public immutable provider;
    /// mu, wei per Gcycle.
    uint128 public unitPrice;
    /// Number of registered MEC servers (the last index handed out).
    uint32 public mecCount;

    /// UE identity Id_u (its account) -> wallet W_u that receives refunds; zero = unknown UE.
    mapping(address ue => address payable wallet) public ueWallet;
    /// MEC server account -> its wallet and index.
    mapping(address server => Mec) public mecs;
    /// MEC index -> MEC server account (to read an escrow back as addresses).
    mapping(uint32 index => address server) public mecServer;
    /// (UE, task id) -> escrow. Task ids live in each UE's own namespace.
    mapping(address ue => mapping(uint64 taskId => Escrow)) public escrows;

    event UnitPriceSet(uint256 unitPrice);
    event MecRegistered(address indexed server, uint32 indexed index, address wallet);
    /// The paper's CreationTrade(): Id_u, W_u and PK_u of a new UE, and the price mu it joins at.
    event TradeCreated(address indexed ue, address wallet, bytes publicKey, uint256 unitPrice);
    /// The paper's Trading(): phi_u of task (d_u, xi_u, tau_u) now held in escrow for a MEC server.
    event EscrowOpened(
        address indexed ue,
        uint64 indexed taskId,
        address indexed mec,
        uint256 amount,
        uint256 dataSize,
        uint256 serviceDemand,
        uint256 deadline
    );
    event EscrowPaid(
        address indexed ue, uint64 indexed taskId, address indexed mec, uint256 amount, bytes32 resultHash
    );
    event EscrowRefunded(address indexed ue, uint64 indexed taskId, address wallet, uint256 amount);

    error NotProvider(address caller);
    error ZeroUnitPrice();
    error ZeroAddress();
    error MecAlreadyRegistered(address server);
    error UeAlreadyRegistered(address ue);
    error InvalidPublicKey(address caller);
    error UnknownUe(address ue);
    error UnknownMec(address server);
    error ZeroDemand();
    error ZeroPayment();
    /// phi_u = mu * xi_u does not fit the escrow's 128-bit amount (refused, never truncated).
    error AmountTooLarge(uint256 amount, uint256 maxAmount);
    error WrongValue(uint256 expected, uint256 sent);
    error DeadlineInPast(uint256 deadline, uint256 blockTime);
    error TaskExists(address ue, uint64 taskId);
    error UnknownTask(address ue, uint64 taskId);
    error NotTaskMec(address caller);
    error EmptyResult();
    error DeadlinePassed(uint256 deadline, uint256 blockTime);
    error DeadlineNotReached(uint256 deadline, uint256 blockTime);
    error AlreadyPaid(address ue, uint64 taskId);
    error AlreadyRefunded(address ue, uint64 taskId);
    error TransferFailed(address to);

    modifier onlyProvider() {
        if (msg.sender != provider) revert NotProvider(msg.sender);
        _;
    }

    /// @param unitPrice_ mu, wei per Gcycle.
    constructor(uint128 unitPrice_) {
        if (unitPrice_ == 0) revert ZeroUnitPrice();
        provider = msg.sender;
        unitPrice = unitPrice_;
        emit UnitPriceSet(unitPrice_);
    }

    // ------------------------------------------------------------------ ESP

    /// Set mu (wei per Gcycle). Escrows already open keep the amount they were opened with.
    function setUnitPrice(uint128 newUnitPrice) external onlyProvider {
        if (newUnitPrice == 0) revert ZeroUnitPrice();
        unitPrice = newUnitPrice;
        emit UnitPriceSet(newUnitPrice);
    }

    /// Register MEC server `server` (the account that completes tasks), paid into `wallet`.
    function registerMec(address server, address payable wallet) external onlyProvider returns (uint32 index) {
        if (server == address(0) || wallet == address(0)) revert ZeroAddress();
        if (mecs[server].index != 0) revert MecAlreadyRegistered(server);
        index = ++mecCount;
        mecs[server] = Mec(wallet, index);
        mecServer[index] = server;
        emit MecRegistered(server, index, wallet);
    }

    // ------------------------------------------------------------------ UE

    /// The paper's CreationTrade(): register the caller as UE u.
    /// @param wallet W_u, where refunds go (may be the caller itself).
    /// @param publicKey PK_u, the 64-byte uncompressed secp256k1 key without its 0x04 prefix;
    ///        it must hash to the caller's address Id_u, so only key holders (not contracts) join.
    function createTrade(address payable wallet, bytes calldata publicKey) external {
        if (wallet == address(0)) revert ZeroAddress();
        if (publicKey.length != 64 || address(uint160(uint256(keccak256(publicKey)))) != msg.sender) {
            revert InvalidPublicKey(msg.sender);
        }
        if (ueWallet[msg.sender] != address(0)) revert UeAlreadyRegistered(msg.sender);
        ueWallet[msg.sender] = wallet;
        emit TradeCreated(msg.sender, wallet, publicKey, unitPrice);
    }

    /// The paper's Trading(): pay phi_u = mu * xi_u into escrow for task `taskId` on MEC `mecServer_`.
    /// @param dataSize d_u, bits (recorded in the event, not priced).
    /// @param serviceDemand xi_u, CPU cycles.
    /// @param deadline tau_u as an absolute block time, unix seconds; must be in the future.
    function trading(address mecServer_, uint64 taskId, uint64 dataSize, uint64 serviceDemand, uint40 deadline)
        external
        payable
    {
        if (ueWallet[msg.sender] == address(0)) revert UnknownUe(msg.sender);
        uint32 mecIndex = mecs[mecServer_].index;
        if (mecIndex == 0) revert UnknownMec(mecServer_);
        if (serviceDemand == 0) revert ZeroDemand();
        uint256 amount = uint256(unitPrice) * serviceDemand / CYCLES_PER_GCYCLE;
        if (amount == 0) revert ZeroPayment();
        // mu < 2^128 and xi_u < 2^64 make amounts up to 2^192 possible: the escrow keeps 128
        // bits, so a larger amount is refused here rather than cut (and the rest stranded).
        if (amount > type(uint128).max) revert AmountTooLarge(amount, type(uint128).max);
        if (msg.value != amount) revert WrongValue(amount, msg.value);
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        Escrow storage e = escrows[msg.sender][taskId];
        if (e.state != State.None) revert TaskExists(msg.sender, taskId);
        escrows[msg.sender][taskId] = Escrow(uint128(amount), deadline, mecIndex, State.Open);
        emit EscrowOpened(msg.sender, taskId, mecServer_, amount, dataSize, serviceDemand, deadline);
    }

    /// The UE takes its payment back after the deadline passed without a completion.
    function refund(uint64 taskId) external {
        Escrow storage e = escrows[msg.sender][taskId];
        State state = e.state;
        if (state == State.None) revert UnknownTask(msg.sender, taskId);
        if (state == State.Paid) revert AlreadyPaid(msg.sender, taskId);
        if (state == State.Refunded) revert AlreadyRefunded(msg.sender, taskId);
        if (block.timestamp <= e.deadline) revert DeadlineNotReached(e.deadline, block.timestamp);
        uint256 amount = e.amount;
        // Checks-effects-interactions: the escrow is closed before any ether leaves.
        e.state = State.Refunded;
        address payable wallet = ueWallet[msg.sender];
        emit EscrowRefunded(msg.sender, taskId, wallet, amount);
        _send(wallet, amount);
    }

    // ------------------------------------------------------------------ MEC

    /// The task's MEC server records its completion (`resultHash` commits to the result it
    /// returned to the UE) before the deadline, and is paid phi_u into its wallet W_m.
    function complete(address ue, uint64 taskId, bytes32 resultHash) external {
        if (resultHash == bytes32(0)) revert EmptyResult();
        Escrow storage e = escrows[ue][taskId];
        State state = e.state;
        if (state == State.None) revert UnknownTask(ue, taskId);
        Mec memory mec = mecs[msg.sender];
        if (mec.index == 0 || mec.index != e.mecIndex) revert NotTaskMec(msg.sender);
        if (state == State.Paid) revert AlreadyPaid(ue, taskId);
        if (state == State.Refunded) revert AlreadyRefunded(ue, taskId);
        if (block.timestamp > e.deadline) revert DeadlinePassed(e.deadline, block.timestamp);
        uint256 amount = e.amount;
        // Checks-effects-interactions: the escrow is closed before any ether leaves, so a
        // wallet that re-enters finds it Paid.
        e.state = State.Paid;
        emit EscrowPaid(ue, taskId, msg.sender, amount, resultHash);
        _send(mec.wallet, amount);
    }

    // ------------------------------------------------------------------ reads

    /// phi_u = mu * xi_u / 1e9 in wei for a service demand xi_u in CPU cycles, at the current mu.
    function quote(uint64 serviceDemand) external view returns (uint256) {
        return uint256(unitPrice) * serviceDemand / CYCLES_PER_GCYCLE;
    }

    function _send(address payable to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to);
    }
}
