// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ArtistCoin
/// @notice Plain ERC-20 (18 decimals); the whole initial supply is minted to `owner_`.
contract ArtistCoin is ERC20 {
    constructor(string memory name_, string memory symbol_, uint256 initialSupply, address owner_)
        ERC20(name_, symbol_)
    {
        _mint(owner_, initialSupply);
    }
}
